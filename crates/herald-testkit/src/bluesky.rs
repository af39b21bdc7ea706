//! The bluesky fake (not built yet).
