//! The discord fake (not built yet).
