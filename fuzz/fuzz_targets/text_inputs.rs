//! The text parsers: --ranges lists, /proc/iomem files (also as the
//! capture and restore kernels' tripwire reads them), the manifest and the
//! kernel command line's jump-back entry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kjump_sys::ranges::parse_range_list(text);
    let _ = kjump_sys::ranges::parse_iomem("fuzz", text);
    let _ = kjump_sys::ranges::parse_iomem_named("fuzz", text, "Crash kernel");
    let _ = kjump_handoff::manifest::Manifest::parse(text);
    let _ = kjump_sys::kexec::jump_back_entry(text);
    let _ = kjump_handoff::plan::JumpPlan::from_iomem(text).map(|p| p.memmap_args());
    if let Ok(region) = kjump_image_format::PhysRange::new(
        kjump_image_format::PhysAddr(0x2f00_0000),
        kjump_image_format::PhysAddr(0x3f00_0000),
    ) {
        let _ = kjump_init::confine::check(text, region);
    }
});
