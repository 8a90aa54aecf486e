//! The smallest useful Cairn task: prints its arguments and environment, and writes a
//! file into its sandbox (the only directory it can see).

use std::io::Write;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
    println!("{greeting} from a Cairn wasm task");
    println!("args: {}", args.join(" "));
    if let Some(id) = cairn_sdk::task::id() {
        println!("task: {id}");
    }
    let path = cairn_sdk::task::sandbox().join("hello.txt");
    let mut f = std::fs::File::create(&path)?;
    writeln!(f, "written by hello with args: {}", args.join(" "))?;
    println!("wrote {}", path.display());
    Ok(())
}
