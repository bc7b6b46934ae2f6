//! PLACEMENT as the workers read it: a memory mapping of the pinned array, no bpf() call per
//! request. What the engine or edgectl writes (through the mapping, or a bpf() update as any
//! tool would) is what every mapping reads, and what `edgectl placement` lists.

use edgeplane_abi::{MAX_PLACEMENTS, Placement, placement_flags, placement_kind};
use edgeplane_testkit::{TestPins, require_root};

#[test]
fn placements_written_either_way_are_read_through_every_mapping() -> anyhow::Result<()> {
    if !require_root("placements_written_either_way") {
        return Ok(());
    }
    let pins = TestPins::new("placement-map");
    let dp = pins.load()?;
    let maps = dp.maps()?;
    let worker_view = maps.placement_reader()?;
    assert_eq!(
        worker_view.get(7),
        Placement::default(),
        "never placed: here"
    );
    let at_dc3 = Placement {
        kind: placement_kind::DATACENTER,
        datacenter: 3,
        flags: placement_flags::SMART,
        ..Default::default()
    };
    // The engine's write, through its own mapping: seen by the worker's at once.
    maps.set_placement(7, at_dc3)?;
    assert_eq!(worker_view.get(7), at_dc3);
    assert_eq!(maps.placement(7)?, at_dc3, "and by a bpf() lookup");
    // A bpf() update (a tool that does not map the array) is seen by the mapping too.
    let mut by_syscall: aya::maps::Array<aya::maps::MapData, Placement> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(
            aya::maps::MapData::from_pin(pins.dir().join("PLACEMENT"))?,
        )?)?;
    let region = Placement {
        kind: placement_kind::REGION,
        flags: placement_flags::PINNED,
        ..Default::default()
    };
    by_syscall.set(MAX_PLACEMENTS - 1, region, 0)?;
    assert_eq!(worker_view.get(MAX_PLACEMENTS - 1), region);
    assert_eq!(
        maps.placement_list()?,
        [(7, at_dc3), (MAX_PLACEMENTS - 1, region)],
        "edgectl lists what is placed"
    );
    // Past the table: here, never a read out of bounds.
    assert_eq!(worker_view.get(MAX_PLACEMENTS), Placement::default());
    assert_eq!(worker_view.get(u32::MAX), Placement::default());
    assert!(maps.set_placement(MAX_PLACEMENTS, at_dc3).is_err());
    Ok(())
}
