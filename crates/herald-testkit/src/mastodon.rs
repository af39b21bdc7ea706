//! The mastodon fake (not built yet).
