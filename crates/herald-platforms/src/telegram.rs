//! Telegram (not built yet).

use crate::{Adapter, Connection, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified};
use async_trait::async_trait;

pub struct Telegram;

#[async_trait]
impl Adapter for Telegram {
    fn platform(&self) -> &'static Platform {
        crate::registry("telegram")
    }

    async fn verify(&self, _net: &Net, _conn: &Connection) -> Result<Verified, PlatformError> {
        Err(PlatformError::invalid("not built yet"))
    }

    async fn publish(&self, _net: &Net, _conn: &Connection, _post: &Outgoing) -> Result<Published, PlatformError> {
        Err(PlatformError::invalid("not built yet"))
    }

    fn pacing(&self, _conn: &Connection) -> Option<Pacing> {
        None
    }
}
