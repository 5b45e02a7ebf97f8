//! (placeholder: streaming parser of `thin_delta` XML)
