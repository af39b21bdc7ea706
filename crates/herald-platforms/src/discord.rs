//! Discord (not built yet).

use crate::{Adapter, Connection, Net, Outgoing, Pacing, Platform, PlatformError, Published, Verified};
use async_trait::async_trait;

pub struct Discord;

#[async_trait]
impl Adapter for Discord {
    fn platform(&self) -> &'static Platform {
        crate::registry("discord")
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
