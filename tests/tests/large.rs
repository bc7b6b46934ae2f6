//! Large components through edged as deployed (XDP on the server's link, pinned workers): a
//! Rust component with a 16 MiB memory image (apps/ballast) and JavaScript ones
//! (componentize-js) answer correctly on every path: a fresh instance made on the request's
//! path, one prepared ahead while the worker was idle, and a reused one. No request sees what
//! another wrote.

use std::{net::SocketAddr, time::Duration};

use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    raw_http::{get, header},
    require_root,
};

/// The image's 16 MiB in apps/ballast's 64 KiB strides: the marks a request leaves.
const MARKS: u64 = 256;

fn server() -> SocketAddr {
    format!("{}:8080", TwoHosts::SERVER_V4).parse().unwrap()
}

/// One answer: status, x-instance-requests, x-dirty-seen, body.
type Answer = (u16, u64, Option<u64>, String);

/// `count` GETs of `/` for `host` on one keep-alive connection (so on one worker), `gap` apart
/// (the worker is idle in between).
fn requests(
    hosts: &TwoHosts,
    port: u16,
    host: &str,
    count: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Answer>> {
    hosts.client.run(|| -> anyhow::Result<_> {
        let mut s = TwoHosts::connect_from(port, server())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut out = Vec::new();
        for _ in 0..count {
            let (status, headers, body) = get(&mut s, host, "/");
            let number = |name: &str| header(&headers, name).and_then(|v| v.parse::<u64>().ok());
            out.push((
                status,
                number("x-instance-requests").unwrap_or(0),
                number("x-dirty-seen"),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            std::thread::sleep(gap);
        }
        Ok(out)
    })?
}

#[test]
fn large_components_serve_fresh_prepared_and_reused_instances_and_no_request_sees_another()
-> anyhow::Result<()> {
    if !require_root("large_components") {
        return Ok(());
    }
    let ballast = edgeplane_testkit::app("ballast");
    let (js, js_handler) = (
        edgeplane_testkit::js_component(),
        edgeplane_testkit::js_handler_component(),
    );
    let reuse = "limits = { instance_reuse = 1000 }";
    let hosts = TwoHosts::new()?;
    let config = Config::new("large-components")
        .workers(2)
        .set("runtime", "prepare_ahead = 4")
        .app(
            App::component("ballast", &ballast)
                .vip(8080)
                .hosts(&["ballast.test"]),
        )
        .app(
            App::component("ballast-reused", &ballast)
                .hosts(&["ballast-reused.test"])
                .set(reuse),
        )
        .app(App::component("js", &js).hosts(&["js.test"]))
        .app(
            App::component("js-handler-reused", &js_handler)
                .hosts(&["js-handler-reused.test"])
                .set(reuse),
        )
        .app(
            App::component("js-fetch-event-reused", &js)
                .hosts(&["js-fetch-event-reused.test"])
                .set(reuse),
        );
    let _edged = hosts.start(&config)?;
    let gap = Duration::from_millis(30);
    fresh_instances_see_the_pristine_image(&hosts, gap)?;
    reused_instances_keep_their_memory(&hosts, gap)?;
    requests_took_prepared_instances(&hosts, config.admin_addr());
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}

/// Fresh instances: the first on each connection's worker is made on its path, the rest were
/// prepared ahead while the worker waited. Each sees the pristine image.
fn fresh_instances_see_the_pristine_image(hosts: &TwoHosts, gap: Duration) -> anyhow::Result<()> {
    let fresh = requests(hosts, 46001, "ballast.test", 12, gap)?;
    for (i, (status, served, dirty, body)) in fresh.iter().enumerate() {
        assert_eq!(*status, 200, "ballast request {i}: {body}");
        assert_eq!(
            (*served, *dirty),
            (1, Some(0)),
            "ballast request {i} saw an earlier request's instance or writes"
        );
        assert_eq!(body, "ballast of 16 MiB\n");
    }
    let js_fresh = requests(hosts, 46002, "js.test", 8, gap)?;
    for (i, (status, _, _, body)) in js_fresh.iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (200, "hello from javascript\n"),
            "js request {i}"
        );
    }

    Ok(())
}

/// Reused instances keep their memory, as asked: the same instance serves each request on the
/// connection and finds the marks the previous one left. The fetch event answers once per
/// instance (StarlingMonkey issue 247): the first reuse fails, and from then on the app gets
/// fresh instances instead of failing every other request.
fn reused_instances_keep_their_memory(hosts: &TwoHosts, gap: Duration) -> anyhow::Result<()> {
    let reused = requests(hosts, 46003, "ballast-reused.test", 6, gap)?;
    for (i, (status, served, dirty, _)) in reused.iter().enumerate() {
        assert_eq!(*status, 200);
        let expect_dirty = if *served > 1 { MARKS } else { 0 };
        assert_eq!(
            (*served, *dirty),
            (i as u64 + 1, Some(expect_dirty)),
            "ballast-reused request {i}"
        );
    }
    let js_reused = requests(hosts, 46004, "js-handler-reused.test", 6, gap)?;
    for (i, (status, served, _, body)) in js_reused.iter().enumerate() {
        assert_eq!(
            (*status, *served, body.as_str()),
            (200, i as u64 + 1, "hello from javascript\n"),
            "js-handler-reused request {i}"
        );
    }

    // The fetch event answers once per instance (StarlingMonkey issue 247): the first reuse
    // fails, and from then on the app gets fresh instances instead of failing every other
    // request.
    let refused = requests(hosts, 46005, "js-fetch-event-reused.test", 6, gap)?;
    let statuses: Vec<u16> = refused.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 500, 200, 200, 200, 200]);

    Ok(())
}

/// The prepared path was the one taken: per connection (one worker each) at most the first
/// fresh request found nothing ready. The refused app's 4 fresh requests may each have missed
/// once more while it was still deciding.
fn requests_took_prepared_instances(hosts: &TwoHosts, admin: SocketAddr) {
    let used = hosts.metric(admin, "edgeplane_instances_prepared_used", None);
    let missed = hosts.metric(admin, "edgeplane_instances_prepared_missed", None);
    let made = hosts.metric(admin, "edgeplane_instances_prepared", None);
    assert!(
        used >= 12 + 8 - 2,
        "{used} requests took a prepared instance"
    );
    assert!(made >= used, "{made} made, {used} used");
    assert!(
        missed <= 2 + 4,
        "{missed} fresh requests found none prepared"
    );
}
