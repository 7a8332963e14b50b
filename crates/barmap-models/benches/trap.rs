//! One trapped register access next to a plain load:
//! `cargo bench -p barmap-models --bench trap`.

fn main() {
    let iterations = std::env::var("BARMAP_TRAP_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let c = barmap_models::bench::trap_cost(iterations).expect("a scratch device");
    println!("iterations            {}", c.iterations);
    println!("plain load            {:8.1} ns", c.plain_load_ns);
    println!("trapped load          {:8.1} ns", c.trapped_load_ns);
    println!("trapped store         {:8.1} ns", c.trapped_store_ns);
    println!("register read (API)   {:8.1} ns", c.direct_read_ns);
    println!(
        "trapped / plain       {:8.0}x",
        c.trapped_load_ns / c.plain_load_ns.max(0.001)
    );
}
