//! Caps on every count a spec can ask for, checked before anything is allocated: a typo
//! (`orders = 100000000`) gets an error naming the field instead of a coordinator or worker
//! that dies allocating. Each is far beyond what a sweep needs today.

/// Prompt pairs of a dataset (`[data] n`, lines of a file) and prompts per downstream task.
pub const MAX_PROMPTS: usize = 100_000;
/// Orders of an order study (random or from a file), and edge orders.
pub const MAX_ORDERS: usize = 100_000;
/// Components of an order study's orders in all (orders times the model's components): each
/// is stored and held in memory, and an order study of 4 million is about 15,000 orders of the
/// default model, 3,800 of a 7B model.
pub const MAX_ORDER_COMPONENTS: usize = 4_000_000;
/// Random head sets of a downstream study.
pub const MAX_RANDOM_SETS: usize = 10_000;
/// Solved examples before a downstream question.
pub const MAX_SHOTS: usize = 64;
/// Nested thresholds of one pruning job.
pub const MAX_THRESHOLDS: usize = 100;
/// Edges of one edge sweep (a 7B model's whole graph has about 1.6 million).
pub const MAX_EDGES: usize = 10_000_000;
/// Files of edge scores of one faithfulness run (two curves each).
pub const MAX_SCORE_FILES: usize = 16;
/// Integration steps of EAP-IG (each a forward and backward pass per prompt).
pub const MAX_IG_STEPS: usize = 1000;
/// Layers of a model (the largest public models have about 130).
pub const MAX_LAYERS: usize = 1024;
/// Attention heads per layer (the largest public models have 128).
pub const MAX_HEADS: usize = 1024;
/// Tokens of one forward pass (`[run] batch_tokens`).
pub const MAX_BATCH_TOKENS: usize = 1 << 22;
