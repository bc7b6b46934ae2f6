//! edged's configuration for a test, built typed instead of written by hand: its pins and
//! code cache private to the test, XDP on the server's veth, the apps as values. Rendered by
//! the `toml` crate (paths and strings quoted as TOML wants), then started by
//! [`TwoHosts::start`](crate::TwoHosts::start).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{TestPins, TwoHosts};

/// The admin endpoint an edged in a [`TwoHosts`] world listens on by default (inside the
/// server's namespace, so tests running at once do not share it).
pub const ADMIN: &str = "127.0.0.1:9901";

/// One edged's configuration, and the pin directory and scratch directory it owns.
pub struct Config {
    pub pins: TestPins,
    /// The test's scratch directory: the config file, the code cache, logs.
    pub dir: PathBuf,
    workers: u32,
    admin: SocketAddr,
    debug_headers: bool,
    /// Source prefixes dropped at XDP.
    blocklist: Vec<String>,
    /// More keys per table (`runtime`, `http`, `access_log`, ...), as TOML.
    extra: Vec<(String, toml::Table)>,
    apps: Vec<toml::Table>,
}

impl Config {
    /// A configuration for test `name`: one worker, the admin endpoint at [`ADMIN`], no app.
    pub fn new(name: &str) -> Self {
        let dir = crate::tempdir(name);
        Self {
            pins: TestPins::new(name),
            dir,
            workers: 1,
            admin: ADMIN.parse().expect("a socket address"),
            debug_headers: false,
            blocklist: Vec::new(),
            extra: Vec::new(),
            apps: Vec::new(),
        }
    }

    pub fn workers(mut self, count: u32) -> Self {
        self.workers = count;
        self
    }

    pub fn admin(mut self, addr: &str) -> Self {
        self.admin = addr.parse().expect("a socket address");
        self
    }

    /// Responses say which worker served them and where the request ran.
    pub fn debug_headers(mut self) -> Self {
        self.debug_headers = true;
        self
    }

    /// More keys for `[table]`, as TOML (`prepare_ahead = 4`).
    pub fn set(mut self, table: &str, keys: &str) -> Self {
        self.extra.push((table.to_owned(), parse(keys)));
        self
    }

    pub fn app(mut self, app: App) -> Self {
        self.apps.push(app.0);
        self
    }

    /// Replaces the apps (a reload's next configuration: write it, then reload).
    pub fn set_apps(&mut self, apps: impl IntoIterator<Item = App>) {
        self.apps = apps.into_iter().map(|a| a.0).collect();
    }

    /// Replaces the blocklist.
    pub fn set_blocklist(&mut self, cidrs: &[&str]) {
        self.blocklist = cidrs.iter().map(|c| (*c).to_owned()).collect();
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where the configuration file is written.
    pub fn path(&self) -> PathBuf {
        self.dir.join("edged.toml")
    }

    /// The configuration as TOML.
    pub fn render(&self) -> String {
        let mut root = toml::Table::new();
        root.insert("pin_dir".into(), path_value(self.pins.dir()));
        if !self.blocklist.is_empty() {
            root.insert(
                "blocklist".into(),
                toml::Value::Array(self.blocklist.iter().map(|c| c.as_str().into()).collect()),
            );
        }
        let mut table = |name: &str, keys: toml::Table| {
            let entry = root
                .entry(name.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.extend(keys);
            }
        };
        table(
            "xdp",
            toml_table([(
                "interfaces",
                toml::Value::Array(vec![TwoHosts::SERVER_IF.into()]),
            )]),
        );
        table(
            "workers",
            toml_table([("count", i64::from(self.workers).into())]),
        );
        table(
            "server",
            toml_table([
                ("admin", self.admin.to_string().into()),
                ("debug_headers", self.debug_headers.into()),
            ]),
        );
        table(
            "runtime",
            toml_table([("cache_dir", path_value(&self.dir.join("cache")))]),
        );
        for (name, keys) in &self.extra {
            table(name, keys.clone());
        }
        root.insert(
            "apps".into(),
            toml::Value::Array(self.apps.iter().cloned().map(toml::Value::Table).collect()),
        );
        toml::to_string(&root).expect("a TOML table renders")
    }

    /// Writes the configuration file; returns its path.
    pub fn write(&self) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.path();
        std::fs::write(&path, self.render())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// One `[[apps]]` table.
#[derive(Clone)]
pub struct App(toml::Table);

impl App {
    /// An app served by the component at `path`.
    pub fn component(name: &str, path: &Path) -> Self {
        Self(toml_table([
            ("name", name.into()),
            ("component", path_value(path)),
            ("vips", toml::Value::Array(Vec::new())),
        ]))
    }

    /// Guest app `name` of `apps/` (built once per process), on host `<name>.test`.
    pub fn guest(name: &str) -> Self {
        Self::component(name, &crate::app(name)).hosts(&[&format!("{name}.test")])
    }

    /// An app with a name and nothing else yet (`set` adds the rest).
    pub fn named(name: &str) -> Self {
        Self(toml_table([
            ("name", name.into()),
            ("vips", toml::Value::Array(Vec::new())),
        ]))
    }

    /// An app answering `body` itself (a static route).
    pub fn static_body(name: &str, body: &str) -> Self {
        Self(toml_table([
            ("name", name.into()),
            ("static_body", body.into()),
            ("vips", toml::Value::Array(Vec::new())),
        ]))
    }

    /// Reached at the server's address on `port` over TCP (XDP classifies it as this app).
    pub fn vip(mut self, port: u16) -> Self {
        if let Some(toml::Value::Array(vips)) = self.0.get_mut("vips") {
            vips.push(format!("{}:{port}/tcp", TwoHosts::SERVER_V4).into());
        }
        self
    }

    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.0.insert(
            "hosts".into(),
            toml::Value::Array(hosts.iter().map(|h| (*h).into()).collect()),
        );
        self
    }

    /// More keys, as TOML (`limits = { instance_reuse = 1000 }`).
    pub fn set(mut self, keys: &str) -> Self {
        self.0.extend(parse(keys));
        self
    }
}

fn parse(keys: &str) -> toml::Table {
    keys.parse()
        .unwrap_or_else(|e| panic!("test config keys {keys:?}: {e}"))
}

fn toml_table<const N: usize>(pairs: [(&str, toml::Value); N]) -> toml::Table {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn path_value(path: &Path) -> toml::Value {
    path.to_str().expect("a UTF-8 path").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_config_is_what_edged_reads() {
        let config = Config::new("config-render")
            .workers(2)
            .debug_headers()
            .set("runtime", "prepare_ahead = 4")
            .app(
                App::component("hello", Path::new("/apps/hello.wasm"))
                    .vip(8080)
                    .hosts(&["hello.test"])
                    .set("limits = { instance_reuse = 10 }"),
            )
            .app(App::static_body("static", "hi\n").hosts(&["static.test"]));
        let cfg = edgeplane::config::EdgedConfig::parse(&config.render()).unwrap();
        assert_eq!(cfg.pin_dir, config.pins.dir());
        assert_eq!(cfg.xdp.interfaces, vec![TwoHosts::SERVER_IF.to_owned()]);
        assert_eq!(cfg.server.admin, config.admin_addr());
        assert!(cfg.server.debug_headers);
        assert_eq!(cfg.runtime.prepare_ahead, 4);
        assert_eq!(cfg.runtime.cache_dir, config.dir.join("cache"));
        assert_eq!(cfg.apps.len(), 2);
        assert_eq!(cfg.apps[0].name, "hello");
        assert_eq!(cfg.apps[0].hosts, vec!["hello.test".to_owned()]);
        assert_eq!(cfg.apps[0].limits.instance_reuse, 10);
        assert_eq!(cfg.apps[1].static_body.as_deref(), Some("hi\n"));
        let mut config = config;
        config.set_apps([App::named("broken").set(r#"vips = ["10.0.0.1/tcp"]"#)]);
        config.set_blocklist(&["10.77.0.3/32"]);
        let text = config.render();
        assert!(text.contains(r#"blocklist = ["10.77.0.3/32"]"#), "{text}");
        let error = edgeplane::config::EdgedConfig::parse(&text).unwrap_err();
        assert!(format!("{error:#}").contains("vips"), "{error:#}");
    }
}
