#[path = "../src/bench.rs"]
mod bench;
#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}
#[derive(clap::Subcommand)]
enum Cmd {
    Bench(bench::BenchArgs),
}
fn main() {
    let Cli { cmd: Cmd::Bench(a) } = clap::Parser::parse();
    std::process::exit(bench::run(&a));
}
