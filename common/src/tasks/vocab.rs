//! Word lists the task generators draw from.

/// Numerals 1..=20 (the paper draws members 1..12; plain sequences go further).
pub fn numerals(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

/// Number words one..twelve.
pub const NUMBER_WORDS: [&str; 12] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
];

/// Months of the year.
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Days of the week.
pub const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Capital letters.
pub fn letters() -> Vec<String> {
    ('A'..='Z').map(|c| c.to_string()).collect()
}

/// Fibonacci numbers (one leading 1: members must be distinct).
pub const FIBONACCI: [u64; 14] = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610];

/// First names for the paper's templates; the generator keeps those that are one token.
pub const NAMES: [&str; 40] = [
    "John", "Mary", "Paul", "Anna", "David", "Sarah", "James", "Laura", "Mark", "Emma", "Peter",
    "Alice", "Tom", "Kate", "Jack", "Lucy", "Adam", "Rose", "Ben", "Jane", "Sam", "Lisa", "Mike",
    "Amy", "Dan", "Eva", "Luke", "Nina", "Max", "Ruth", "Tim", "Joan", "Carl", "Ella", "Fred",
    "Iris", "Greg", "Julia", "Jim", "Sophie",
];

/// Verbs of the paper's templates (`"{name} {verb} in 1."`).
pub const VERBS: [&str; 3] = ["done", "lost", "born"];

/// Nouns of the greater-than template (`"The {noun} lasted from the year 1732 to the year 17"`).
pub const NOUNS: [&str; 12] = [
    "war",
    "siege",
    "reign",
    "drought",
    "expedition",
    "voyage",
    "strike",
    "famine",
    "treaty",
    "journey",
    "festival",
    "project",
];
