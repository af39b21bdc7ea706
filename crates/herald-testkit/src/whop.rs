//! The whop fake (not built yet).
