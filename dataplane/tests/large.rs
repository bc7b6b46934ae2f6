//! Large components in the runtime: a 16 MiB memory image is mapped copy-on-write, not copied,
//! into each fresh instance; instances prepared ahead are fresh ones and go with their app's
//! version.

use std::sync::atomic::Ordering::Relaxed;

use edgeplane_dataplane::{http::Response, wasm::AppRuntime};
use edgeplane_testkit::{runtime_preparing, spec, tempdir};

/// Minor page faults of this thread so far.
fn minor_faults() -> u64 {
    // SAFETY: getrusage writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage.ru_minflt as u64
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// x-instance-requests and x-dirty-seen of a ballast response.
fn instance_and_marks(rt: &std::rc::Rc<AppRuntime>, app: &str) -> (String, String) {
    let r = edgeplane_testkit::block_on(edgeplane_testkit::handle(
        rt,
        app,
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    ))
    .expect("ballast answers");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (
        header(&r, "x-instance-requests").unwrap_or("").to_owned(),
        header(&r, "x-dirty-seen").unwrap_or("").to_owned(),
    )
}

/// What an idle worker does before it waits: the pieces of work `prepare_ahead` found.
fn idle(rt: &AppRuntime) -> usize {
    let mut done = 0;
    while rt.prepare_ahead() {
        done += 1;
        assert!(done < 100, "idle work never ends");
    }
    done
}

#[test]
fn a_large_memory_image_is_mapped_into_each_fresh_instance_not_copied() {
    let cache = tempdir("large-cow");
    let (rt, _) = runtime_preparing(
        vec![spec("ballast", edgeplane_testkit::app("ballast"))],
        &cache,
        0,
    );
    rt.preload("ballast").unwrap();
    edgeplane_testkit::block_on(rt.instantiate("ballast")).unwrap();
    let before = minor_faults();
    for _ in 0..10 {
        edgeplane_testkit::block_on(rt.instantiate("ballast")).unwrap();
    }
    let per_instance = (minor_faults() - before) / 10;
    // Copying the 16 MiB image would touch its 4,096 pages; mapping it touches none of them.
    assert!(
        per_instance < 64,
        "{per_instance} page faults per instantiation: the image is copied, not mapped"
    );
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn prepared_instances_are_fresh_are_used_by_the_next_request_and_go_with_their_version() {
    let cache = tempdir("large-prepared");
    let ballast = spec("ballast", edgeplane_testkit::app("ballast"));
    let (rt, counters) = runtime_preparing(vec![ballast.clone()], &cache, 4);
    // No demand yet: nothing to prepare.
    assert_eq!(idle(&rt), 0);
    assert_eq!(instance_and_marks(&rt, "ballast"), ("1".into(), "0".into()));
    assert_eq!(counters.missed.load(Relaxed), 1);
    for round in 0..5 {
        // The finished instance is reset, then one is prepared; then there is nothing to do.
        assert_eq!(idle(&rt), 2, "round {round}");
        assert_eq!(counters.made.load(Relaxed), round + 1);
        // The prepared instance is fresh: it served no one and sees the pristine image,
        // though the previous request marked its own instance's.
        assert_eq!(instance_and_marks(&rt, "ballast"), ("1".into(), "0".into()));
    }
    assert_eq!(counters.made.load(Relaxed), 5);
    assert_eq!(counters.used.load(Relaxed), 5);
    assert_eq!(counters.missed.load(Relaxed), 1);

    // A new version drops the one prepared for the old; the new one has no demand yet.
    assert_eq!(idle(&rt), 2);
    let mut v2 = ballast;
    v2.env.push(("VERSION".into(), "2".into()));
    rt.apply(vec![v2]);
    assert!(!rt.prepare_ahead());
    assert_eq!(instance_and_marks(&rt, "ballast"), ("1".into(), "0".into()));
    assert_eq!(
        counters.used.load(Relaxed),
        5,
        "the old version's instance was not used"
    );
    assert_eq!(counters.missed.load(Relaxed), 2);
    let _ = std::fs::remove_dir_all(cache);
}
