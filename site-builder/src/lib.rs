//! A Zola-compatible static site builder. It receives data values and knows nothing of mailings.
