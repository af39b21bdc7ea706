//! The matrix fake (not built yet).
