// nginx resolves a dynamic module's nginx symbols when it loads the module, so the
// cdylib must link with undefined symbols allowed (they are not in any library).
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "macos" {
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}
