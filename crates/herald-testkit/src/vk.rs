//! The vk fake (not built yet).
