//! The configuration file: `Config::load` on any file content, the start-up that follows it
//! (`Services::open` on the in-memory store, the Envoy route table), and the same text as
//! an operator scope catalog (`CatalogSpec` + `Catalog::build`).
//! Invariants: no panic, at load or at start-up; a loaded configuration written back as
//! TOML loads to the same value.
#![no_main]

use std::{io::Write, path::PathBuf, sync::OnceLock};

use casola_auth::{
    config::{Config, NoOverrides},
    scope::{Catalog, CatalogSpec},
    server::Services,
    transport::envoy::RouteTable,
};
use figment::{
    Figment,
    providers::{Format, Toml},
};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for every input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "casola-auth-fuzz-config-{}.toml",
            std::process::id()
        ))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn load(text: &str) -> Result<Config, String> {
    let mut file = std::fs::File::create(path()).expect("the temp file");
    file.write_all(text.as_bytes()).expect("written");
    drop(file);
    Config::load(Some(path()), NoOverrides {}).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(config) = load(text) {
        let written = toml::to_string(&config).expect("a loaded configuration serializes");
        let again = load(&written).unwrap_or_else(|e| panic!("{written}\nno longer loads: {e}"));
        assert_eq!(again, config, "the configuration round-trips through TOML");

        // Start-up, without I/O: no database, no operator catalog file.
        let mut memory = config.clone();
        memory.database_url = None;
        memory.listen_database_url = None;
        memory.catalog.file = None;
        if let Ok(services) = runtime().block_on(Services::open(&memory)) {
            let _ = RouteTable::from_config(&memory.envoy, services.authorizer.catalog());
        }
        let _ = config.shutdown_grace();
    }

    // The same text as an operator's scope catalog.
    if let Ok(spec) = Figment::from(Toml::string(text)).extract::<CatalogSpec>() {
        let _ = Catalog::build(spec);
    }
});
