//! Reading a configuration into what the workers serve: components staged under their content
//! hash and compiled into the code cache before any worker sees them, the apps' specs and
//! routes, and the check that a reload changes only what can change while serving.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use edgeplane_dataplane::{
    router::{Routes, StaticResponse},
    wasm::{AppSpec, CodeCache, build_engine},
};
use sha2::{Digest as _, Sha256};

use crate::config::{EdgedConfig, Invalid, located};

/// A component as served: copied under its digest in `<cache_dir>/components`, so the bytes a
/// worker loads are the bytes that were checked, whatever happens to the operator's file later.
fn stage_component(source: &Path, cache_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let wasm = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    stage_bytes(&wasm, cache_dir)
}

/// `wasm` staged under its digest in `<cache_dir>/components` (a component from a file or from
/// the fleet's object store): its path and digest.
pub fn stage_bytes(wasm: &[u8], cache_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let digest = hex::encode(Sha256::digest(wasm));
    let dir = cache_dir.join("components");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let staged = dir.join(format!("{digest}.wasm"));
    if !staged.exists() {
        let tmp = staged.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, wasm)
            .and_then(|()| std::fs::rename(&tmp, &staged))
            .with_context(|| format!("staging {}", staged.display()))?;
    }
    Ok((staged, digest))
}

/// The apps with a component, as the workers' runtime takes them.
fn app_specs(cfg: &EdgedConfig) -> anyhow::Result<Vec<AppSpec>> {
    let mut specs = Vec::new();
    for app in &cfg.apps {
        let Some(component) = &app.component else {
            continue;
        };
        let (staged, digest) = stage_component(component, &cfg.runtime.cache_dir)
            .map_err(|e| Invalid::error(format!("{}.component", app.at), format!("{e:#}")))?;
        specs.push(AppSpec {
            name: app.name.clone(),
            component: staged,
            digest,
            env: app
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            allowed_backends: app.allowed_backends.clone(),
            split_app: app.split_app.clone(),
            limits: app.limits,
        });
    }
    Ok(specs)
}

/// Compiles every spec's component into the code cache on disk (a no-op for those compiled
/// before), so workers load artifacts instead of each compiling the same code at once. A
/// component that does not compile or link is refused here, naming its app.
fn compile(cfg: &EdgedConfig, specs: &[AppSpec]) -> anyhow::Result<()> {
    let engine = build_engine(&cfg.runtime.engine)?;
    let mut cache = CodeCache::<()>::new(engine, &cfg.runtime.cache_dir, cfg.runtime.cache)?;
    for spec in specs {
        cache
            .get_or_load(&spec.name, &spec.component, |_| Ok(()))
            .map_err(|e| {
                let at = cfg
                    .apps
                    .iter()
                    .find(|a| a.name == spec.name)
                    .map_or_else(String::new, |a| format!("{}.component", a.at));
                Invalid::error(at, format!("app {}: {e:#}", spec.name))
            })?;
    }
    Ok(())
}

/// Which app serves which host.
pub fn routes(cfg: &EdgedConfig) -> Routes {
    let mut routes = Routes::default();
    for app in cfg.apps.iter() {
        if let Some(body) = &app.static_body {
            for h in &app.hosts {
                routes.statics.insert(
                    h.to_ascii_lowercase(),
                    StaticResponse {
                        app: app.name.clone(),
                        status: 200,
                        headers: vec![
                            ("content-type".into(), "text/plain; charset=utf-8".into()),
                            ("x-edge-placement".into(), "local".into()),
                        ],
                        body: body.clone().into_bytes(),
                    },
                );
            }
        }
    }
    let served: Vec<_> = cfg.apps.iter().filter(|a| a.component.is_some()).collect();
    for app in &served {
        for h in &app.hosts {
            routes
                .hosts
                .insert(h.to_ascii_lowercase(), app.name.clone());
        }
        if app.default {
            routes.default = Some(app.name.clone());
        }
    }
    // A lone app that names no hosts serves every host; one that names hosts serves only those.
    if routes.default.is_none() && served.len() == 1 && served[0].hosts.is_empty() {
        routes.default = Some(served[0].name.clone());
    }
    routes
}

/// A configuration read, checked and compiled: ready to apply.
pub struct Prepared {
    pub cfg: EdgedConfig,
    pub specs: Vec<AppSpec>,
}

/// Stages and compiles `cfg`'s components (at start).
pub fn prepare_config(cfg: EdgedConfig) -> anyhow::Result<Prepared> {
    let specs = app_specs(&cfg)?;
    compile(&cfg, &specs)?;
    Ok(Prepared { cfg, specs })
}

/// Reads the configuration at `path` (its relative paths from `base`) for a reload of an edged
/// running `running` and serving `served`: parsed, validated, only reloadable settings changed, every component staged, and
/// those not served already (by digest: their artifacts are in the code cache) compiled. Any
/// failure refuses it whole, saying which file, line and field.
pub fn prepare_reload(
    path: &Path,
    base: &Path,
    running: &EdgedConfig,
    served: &[AppSpec],
) -> anyhow::Result<Prepared> {
    let (mut cfg, text) = EdgedConfig::read_relative_to(path, base)?;
    cfg.xdp.interfaces.clone_from(&running.xdp.interfaces);
    cfg.xdp.mode = running.xdp.mode;
    cfg.pin_dir.clone_from(&running.pin_dir);
    if let Some(field) = restart_only_change(running, &cfg) {
        return Err(located(
            path,
            &text,
            Invalid::error(
                field,
                "this setting cannot change while edged runs; it takes effect at `edged upgrade` or a restart",
            ),
        ));
    }
    let specs = app_specs(&cfg).map_err(|e| located(path, &text, e))?;
    let new: Vec<AppSpec> = specs
        .iter()
        .filter(|s| !served.iter().any(|old| old.digest == s.digest))
        .cloned()
        .collect();
    compile(&cfg, &new).map_err(|e| located(path, &text, e))?;
    Ok(Prepared { cfg, specs })
}

/// The first setting that differs between `a` and `b` among those a reload cannot change:
/// everything but apps, blocklist, rate limits and the worker load threshold.
pub fn restart_only_change(a: &EdgedConfig, b: &EdgedConfig) -> Option<&'static str> {
    let same =
        |x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| format!("{x:?}") == format!("{y:?}");
    let (wa, wb) = (&a.workers, &b.workers);
    [
        ("workers.count", same(&wa.count, &wb.count)),
        ("workers.steer", same(&wa.steer, &wb.steer)),
        ("workers.pin", same(&wa.pin, &wb.pin)),
        (
            "workers.cpumap_queue_size",
            same(&wa.cpumap_queue_size, &wb.cpumap_queue_size),
        ),
        ("server", same(&a.server, &b.server)),
        ("http", same(&a.http, &b.http)),
        ("runtime", same(&a.runtime, &b.runtime)),
        ("datacenter", same(&a.datacenter, &b.datacenter)),
        ("access_log", same(&a.access_log, &b.access_log)),
        ("control", same(&a.control, &b.control)),
    ]
    .into_iter()
    .find_map(|(field, same)| (!same).then_some(field))
}

/// Component digests by app, for `edgectl app versions`.
pub fn digests(specs: &[AppSpec]) -> HashMap<String, String> {
    specs
        .iter()
        .map(|s| (s.name.clone(), s.digest.clone()))
        .collect()
}
