//! The webhook fake (not built yet).
