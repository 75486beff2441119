//! Embeds a compiled model in a Rust program: reads a raw float32 input tensor (the model's input
//! shape) from the first argument, runs it on two threads, and writes the raw float32 output to the
//! second.

use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: inceptc-embed-rust INPUT.f32 OUTPUT.f32".into());
    };
    let mut model = inceptc_main::Model::new(2)?;
    let shape = model.input_shape();
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // A wrong length is refused with a message.
    let short = model
        .run(&x[1..])
        .expect_err("a short input must be refused");
    assert!(short.contains("the input has"), "{short}");
    let y = model.run(&x)?;
    let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(output, bytes).map_err(|e| format!("{output}: {e}"))?;
    println!("input {shape:?} -> output {:?}", model.output_shape());
    Ok(())
}
