//! Pictures that are small on the wire but huge decoded must not pile up in memory while
//! they wait for the model. Alone in its test binary, so the process's memory is the
//! server's.

mod common;
use common::*;

use borscht_protocol::ServerMessage;
use borscht_server::limits::Limits;

/// `VmRSS` or `VmHWM` of this process, in MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_decompression_heavy_pictures_wait_in_bounded_memory() {
    // 4000 x 4000 16-bit RGBA of one colour: a few hundred KB of PNG, 128 MB decoded.
    let image =
        image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(4000, 4000, image::Rgba([30_000, 200, 9, 65_535]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba16(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert!(png.len() < 1 << 20, "{} bytes", png.len());
    let limits = Limits { max_requests_per_ip: 64, queue_capacity: 64, ..Limits::default() };
    let server = TestServer::start(limits).await;
    let before = memory_mib("VmRSS:");
    // 16 connections with 4 requests each, all waiting for the model (still loading).
    let mut sockets = Vec::new();
    for _ in 0..16 {
        sockets.push(server.connect().await);
    }
    for (k, ws) in sockets.iter_mut().enumerate() {
        for j in 0..4 {
            send(ws, &recognize((k * 4 + j) as u64, &png, 2)).await;
        }
    }
    for ws in sockets.iter_mut() {
        for _ in 0..4 {
            assert!(matches!(next(ws).await, ServerMessage::Accepted { .. }));
        }
    }
    assert_eq!(server.state.queue.depth(), 64);
    let waiting = memory_mib("VmRSS:") - before;
    let peak = memory_mib("VmHWM:") - before;
    // Queued as 512 x 512 RGB (0.75 MiB each, 48 MiB for all; with the test's own
    // clients and the allocator's slack about 200 MiB measured); decoding two at a time
    // (the default) peaks at about 600 MiB. Kept decoded, the 64 would hold 8 GiB.
    eprintln!("64 pictures waiting: {waiting:.0} MiB more resident, {peak:.0} MiB more at the peak");
    assert!(waiting < 400.0, "{waiting:.0} MiB more resident while 64 pictures wait");
    assert!(peak < 1200.0, "{peak:.0} MiB more at the peak");
}
