use crate::Exit;
use crate::cli::BenchCommand;
use crate::config::Config;
pub async fn run(_c: BenchCommand, _config: &Config) -> Result<(), Exit> {
    Ok(())
}
