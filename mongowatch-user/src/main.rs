fn main() {
    eprintln!("mongowatch: not built yet");
    std::process::exit(2);
}
