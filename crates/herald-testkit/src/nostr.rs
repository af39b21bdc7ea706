//! The nostr fake (not built yet).
