//! `orders` of an order study: a count, or `"auto"` (batches of orders until every inclusion
//! frequency is known to `ci_width`, see [`crate::convergence`]).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many orders an order study runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderCount {
    /// This many.
    Fixed(usize),
    /// Batches of orders until every frequency's 95 % interval is narrow enough, or a cap.
    Auto,
}

impl OrderCount {
    /// The fixed count (none for `auto`).
    pub fn fixed(self) -> Option<usize> {
        match self {
            OrderCount::Fixed(n) => Some(n),
            OrderCount::Auto => None,
        }
    }
}

impl Serialize for OrderCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OrderCount::Fixed(n) => s.serialize_u64(*n as u64),
            OrderCount::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for OrderCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl Visitor<'_> for Count {
            type Value = OrderCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of orders or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OrderCount, E> {
                usize::try_from(v)
                    .map(OrderCount::Fixed)
                    .map_err(|_| E::custom(format!("{v} orders is too many")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OrderCount, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v}: expected a number of orders or \"auto\""
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OrderCount, E> {
                match v {
                    "auto" => Ok(OrderCount::Auto),
                    _ => Err(E::custom(format!(
                        "\"{v}\": expected a number of orders or \"auto\""
                    ))),
                }
            }
        }
        d.deserialize_any(Count)
    }
}
