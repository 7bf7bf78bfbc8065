//! Metrics registry (in progress).
