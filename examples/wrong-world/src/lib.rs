//! A component of the wrong world: it exports `greet` and nothing Cairn's executor
//! world asks for, so the host tests can check such a component is refused cleanly.

wit_bindgen::generate!({
    path: "wit",
    world: "greeter",
});

struct Greeter;

impl Guest for Greeter {
    fn greet() -> String {
        "hello from the wrong world".into()
    }
}

export!(Greeter);
