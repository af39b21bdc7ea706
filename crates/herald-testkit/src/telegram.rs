//! The telegram fake (not built yet).
