//! (placeholder: filled in by the prune/selector work)
