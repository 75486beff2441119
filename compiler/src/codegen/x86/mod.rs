//! The assembled register tiles: machine code encoded with iced-x86's `code_asm`, because
//! Cranelift's x86-64 backend has 128-bit vectors only and its FMA lowering overwrites a
//! multiplicand (DESIGN.md §6). Each function is specialized for one shape and placed beside the
//! kernels with `cranelift_module::Module::define_function_bytes`; the kernels call it from
//! [`super::emit`]'s register-tile seam. Both families end with `vzeroupper` and clobber only
//! caller-saved registers (System V).
//!
//! - [`Avx2Tile`] `(input, weights, acc, count)`: up to 12 pixels × 8 channels, one ymm
//!   accumulator per pixel, over `count` input channels of one tap. `acc` holds 8 floats per pixel,
//!   read at entry and written back at exit.
//! - [`TransformTile`] `(source, destination, bias, residual)`: a Winograd input or output
//!   transform of one tile, 16 channels a vector (see its documentation).
//! - [`ZmmTile`] `(input, weights, bias, outputs, residuals, channel)`: `pixels` × `vectors` zmm
//!   accumulators over every tap and input channel, then the epilogue: residual, ReLU, and the
//!   store, masked in the last vector. `input` is the tile's first pixel at tap (0, 0); `weights`
//!   the panel, `[tap][input channel][16 · vectors]`; `bias` 16 · vectors floats (or unused);
//!   `outputs` and `residuals` tables of one pointer per pixel, to which `channel` bytes are added.
//!   `prefetch` (the seventh, on the stack) is where the tile starts prefetching into L2 the
//!   weights that a later call will read while its own come from cache, when its
//!   [`ZmmTile::prefetch_step`] is not 0. [`ZmmTile::data`] makes it a bf16 tile (`vdpbf16ps`,
//!   what `--precision bf16` runs) or a u8 × s8 tile (`vpdpbusd`, requantizing to u8 from a
//!   per-channel table at `bias`; what `--precision int8` runs); both are checked against scalar
//!   references in `tests/tiles.rs`.
//! - [`AmxTile`], with [`ZmmTile`]'s arguments: up to 32 pixels × 32 channels (48 for 16 pixels)
//!   of bf16 products (`tdpbf16ps`) or u8 × s8 ones (`tdpbusd`) in AMX tile registers,
//!   configured per call, then the bf16 or u8 epilogue on zmm registers.

use iced_x86::code_asm::registers::{ymm::get_ymm, zmm::get_zmm};
use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Mnemonic, Register};

use super::tile::AVX2_PIXELS;

mod amx;
mod avx2;
mod transform;
mod zmm;

pub use amx::{amx_configure, amx_release, AmxTile, AMX_CHANNELS};
pub use avx2::Avx2Tile;
pub use transform::TransformTile;
pub use zmm::{Data, ZmmTile, ZMM_UNROLL};

/// `ymm<i>`.
fn ymm(i: usize) -> AsmRegisterYmm {
    get_ymm(Register::YMM0 + i as u32).expect("ymm0..ymm15")
}

/// `zmm<i>`.
fn zmm(i: usize) -> AsmRegisterZmm {
    get_zmm(Register::ZMM0 + i as u32).expect("zmm0..zmm31")
}

/// An assembled tile function of either family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileFn {
    /// A 256-bit convolution tile.
    Avx2(Avx2Tile),
    /// A 512-bit convolution tile.
    Zmm(ZmmTile),
    /// A 512-bit Winograd transform.
    Transform(TransformTile),
    /// An AMX bf16 convolution tile.
    Amx(AmxTile),
    /// Loading the kernel-wide AMX tile configuration (`true`) or releasing it (`false`).
    AmxState(bool),
}

impl TileFn {
    /// The function's symbol (unique per shape within a module: see [`ZmmTile::name`]).
    pub fn name(&self, index: usize) -> String {
        match self {
            TileFn::Avx2(t) => t.name(),
            TileFn::Zmm(t) => t.name(index),
            TileFn::Transform(t) => t.name(index),
            TileFn::Amx(t) => t.name(index),
            TileFn::AmxState(true) => format!("tile{index}_amx_configure"),
            TileFn::AmxState(false) => format!("tile{index}_amx_release"),
        }
    }

    /// The machine code.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        match self {
            TileFn::Avx2(t) => t.code(),
            TileFn::Zmm(t) => t.code(),
            TileFn::Transform(t) => t.code(),
            TileFn::Amx(t) => t.code(),
            TileFn::AmxState(true) => amx_configure(),
            TileFn::AmxState(false) => amx_release(),
        }
    }

    /// Arguments the function takes (all 64-bit).
    pub fn arguments(&self) -> usize {
        match self {
            TileFn::Avx2(_) => 4,
            TileFn::Zmm(_) => 7,
            TileFn::Transform(_) => 4,
            TileFn::Amx(_) => 7,
            TileFn::AmxState(_) => 0,
        }
    }
}

/// Independent accumulators of [`fma_probe`]: enough to cover the FMA latency on both ports.
pub const PROBE_ACCUMULATORS: usize = 12;

/// A throughput probe `fn(iterations)`: per iteration, [`PROBE_ACCUMULATORS`] independent
/// `vfmadd231ps` on zmm (`wide`) or ymm registers, twice. Each call does
/// `iterations · 2 · PROBE_ACCUMULATORS` FMAs of 16 or 8 lanes.
pub fn fma_probe(wide: bool) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let accumulators = PROBE_ACCUMULATORS;
    for i in 0..accumulators + 2 {
        a.vxorps(ymm(i % 16), ymm(i % 16), ymm(i % 16))?;
    }
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for _ in 0..2 {
        for i in 0..accumulators {
            match wide {
                true => a.vfmadd231ps(zmm(i), zmm(accumulators), zmm(accumulators + 1))?,
                false => a.vfmadd231ps(ymm(i), ymm(accumulators), ymm(accumulators + 1))?,
            }
        }
    }
    a.dec(rdi)?;
    a.jnz(top)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// `code` disassembled, one instruction a line in Intel syntax with its offset.
pub fn disassemble(code: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    let mut text = String::new();
    for instruction in &mut decoder {
        text.clear();
        formatter.format(&instruction, &mut text);
        out.push_str(&format!("  {:5x}: {text}\n", instruction.ip()));
        // Every function returns at its end; a transform's coefficients follow.
        if instruction.mnemonic() == Mnemonic::Ret {
            let data = code.len() - instruction.next_ip() as usize;
            if data > 0 {
                out.push_str(&format!(
                    "  {:5x}: ({data} bytes of f32 constants)\n",
                    instruction.next_ip()
                ));
            }
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(code: &[u8]) -> Vec<String> {
        disassemble(code)
            .lines()
            .map(|l| l.split_once(": ").map_or("", |x| x.1).to_string())
            .collect()
    }

    #[test]
    fn the_avx2_tile_disassembles_to_its_loop() {
        let code = Avx2Tile {
            pixels: 2,
            pixel_step: 0x1800,
        }
        .code()
        .unwrap();
        let want = [
            "vmovups ymm0,[rdx]",
            "vmovups ymm1,[rdx+20h]",
            "vmovups ymm15,[rsi]",
            "vbroadcastss ymm12,[rdi]",
            "vfmadd231ps ymm0,ymm15,ymm12",
            "vbroadcastss ymm13,[rdi+1800h]",
            "vfmadd231ps ymm1,ymm15,ymm13",
            "add rsi,20h",
            "add rdi,4",
            "dec rcx",
            "jne short 9",
            "vmovups [rdx],ymm0",
            "vmovups [rdx+20h],ymm1",
            "vzeroupper",
            "ret",
        ];
        assert_eq!(lines(&code), want);
    }

    #[test]
    fn a_zmm_tile_keeps_its_accumulators_and_fuses_the_epilogue() {
        let tile = ZmmTile {
            pixels: 2,
            vectors: 2,
            last_lanes: 5,
            taps: [2, 1],
            tap_steps: [0x2000, 0x40],
            channels: 5,
            pixel_step: 0x40,
            bias: true,
            residual: true,
            relu: true,
            prefetch_step: 0,
            data: Data::F32,
        };
        let got = lines(&tile.code().unwrap());
        let want_start = [
            "mov eax,1Fh",
            "kmovw k1,eax",
            "vmovups zmm0,[rdx]",
            "vmovups zmm1,[rdx+40h]",
            "vmovups zmm2,[rdx]",
            "vmovups zmm3,[rdx+40h]",
            "mov r10,rdi",
            "mov r11,rsi",
            "mov esi,2",
            "mov eax,1",
            "vmovups zmm4,[r11]",
            "vmovups zmm5,[r11+40h]",
            "vbroadcastss zmm31,[r10]",
            "vfmadd231ps zmm0,zmm4,zmm31",
            "vfmadd231ps zmm1,zmm5,zmm31",
            "vbroadcastss zmm31,[r10+40h]",
            "vfmadd231ps zmm2,zmm4,zmm31",
            "vfmadd231ps zmm3,zmm5,zmm31",
        ];
        assert_eq!(got[..want_start.len()], want_start);
        // The weights run on past the leftover channel; the input moves to the next tap row:
        // 0x2000 bytes on from the first tap, less the 4 channels the loop moved it.
        for line in ["add r11,80h", "add r10,1FF0h", "dec esi"] {
            assert!(got.contains(&line.to_string()), "{line}: {got:#?}");
        }
        let want_end = [
            "vpxord zmm31,zmm31,zmm31",
            "mov rax,[rcx]",
            "mov r10,[r8]",
            "vaddps zmm0,zmm0,[r10+r9]",
            "vmaxps zmm0,zmm0,zmm31",
            "vmovups [rax+r9],zmm0",
            "vaddps zmm1{k1}{z},zmm1,[r10+r9+40h]",
            "vmaxps zmm1,zmm1,zmm31",
            "vmovups [rax+r9+40h]{k1},zmm1",
            "mov rax,[rcx+8]",
            "mov r10,[r8+8]",
            "vaddps zmm2,zmm2,[r10+r9]",
            "vmaxps zmm2,zmm2,zmm31",
            "vmovups [rax+r9],zmm2",
            "vaddps zmm3{k1}{z},zmm3,[r10+r9+40h]",
            "vmaxps zmm3,zmm3,zmm31",
            "vmovups [rax+r9+40h]{k1},zmm3",
            "vzeroupper",
            "ret",
        ];
        assert_eq!(got[got.len() - want_end.len()..], want_end);
    }

    #[test]
    fn a_one_vector_zmm_tile_broadcasts_from_memory() {
        let tile = ZmmTile {
            pixels: 3,
            vectors: 1,
            last_lanes: 16,
            taps: [1, 1],
            tap_steps: [0, 0],
            channels: 1,
            pixel_step: 0x100,
            bias: false,
            residual: false,
            relu: false,
            prefetch_step: 0,
            data: Data::F32,
        };
        let got = lines(&tile.code().unwrap());
        assert_eq!(got[0], "vpxord zmm0,zmm0,zmm0");
        assert!(got.contains(&"vfmadd231ps zmm2,zmm3,[r10+200h]{1to16}".to_string()));
        assert!(!got.iter().any(|l| l.contains("k1")));
    }

    #[test]
    fn a_prefetching_tile_reads_its_seventh_argument_and_prefetches_each_iteration() {
        let tile = ZmmTile {
            pixels: 4,
            vectors: 2,
            last_lanes: 16,
            taps: [1, 1],
            tap_steps: [0, 0],
            channels: 8,
            pixel_step: 0x100,
            bias: true,
            residual: false,
            relu: true,
            prefetch_step: 0x60,
            data: Data::F32,
        };
        let got = lines(&tile.code().unwrap());
        assert!(got.contains(&"mov rdi,[rsp+8]".to_string()), "{got:#?}");
        // 0x60 bytes an iteration span two lines; two iterations of 4 channels.
        let count = |want: &str| got.iter().filter(|l| *l == want).count();
        assert_eq!(count("prefetcht1 [rdi]"), 1);
        assert_eq!(count("prefetcht1 [rdi+40h]"), 1);
        assert_eq!(count("add rdi,60h"), 1);
        let quiet = ZmmTile {
            prefetch_step: 0,
            ..tile
        };
        let got = lines(&quiet.code().unwrap());
        assert!(!got
            .iter()
            .any(|l| l.contains("prefetch") || l.contains("rsp")));
    }

    #[test]
    fn a_transform_reads_its_coefficients_after_its_code_and_skips_what_is_outside() {
        // F(2, 3) along x: 4 inputs, the first outside the map (zero), 2 results, the second
        // outside the map; 20 channels: one whole vector and 4 masked lanes.
        let tile = TransformTile {
            y: (1, 1),
            x: (2, 3),
            output: false,
            loads: vec![None, Some(0x40), Some(0x80), Some(0xc0)],
            stores: vec![Some(0), Some(0x1000), Some(0x2000), Some(0x3000)],
            vectors: 1,
            last_lanes: 4,
            bias: false,
            residual: false,
            relu: false,
        };
        let code = tile.code().unwrap();
        let listing = disassemble(&code);
        let got = lines(&code);
        assert!(listing.contains("bytes of f32 constants"), "{listing}");
        assert!(got.contains(&"mov eax,0Fh".to_string()), "{listing}");
        // Input 0 is never read, inputs 1..3 are, in the whole vector and (masked) in the last.
        assert!(!got.iter().any(|l| l.contains("[rdi]")), "{listing}");
        assert!(
            got.contains(&"vmovups zmm1,[rdi+40h]".to_string()),
            "{listing}"
        );
        assert!(
            got.contains(&"vmovups zmm1{k1}{z},[rdi+40h]".to_string()),
            "{listing}"
        );
        assert!(
            got.contains(&"vmovups [rsi+3000h]{k1},zmm16".to_string()),
            "{listing}"
        );
        let output = TransformTile {
            output: true,
            loads: vec![Some(0), Some(0x40), Some(0x80), Some(0xc0)],
            stores: vec![Some(0), None],
            bias: true,
            residual: true,
            relu: true,
            ..tile
        };
        let got = lines(&output.code().unwrap());
        assert!(
            got.contains(&"vaddps zmm16,zmm16,[rcx]".to_string()),
            "{got:#?}"
        );
        assert!(
            got.contains(&"vmaxps zmm16,zmm16,zmm31".to_string()),
            "{got:#?}"
        );
        // The second output is outside the map: one store per vector.
        assert_eq!(
            got.iter().filter(|l| l.starts_with("vmovups [rsi")).count(),
            2
        );
    }

    /// What every x86-64 CPU has, as iced names CPUID features (prefetcht1 is SSE's).
    const BASELINE: [&str; 7] = [
        "INTEL8086",
        "INTEL186",
        "INTEL386",
        "X64",
        "SSE",
        "SSE2",
        "CMOV",
    ];

    /// The CPUID features `code`'s instructions need beyond baseline x86-64 and the start-up
    /// check of `tier`, up to its return.
    fn beyond(
        code: &[u8],
        tier: inceptc_runtime::exec::Tier,
    ) -> std::collections::BTreeSet<String> {
        beyond_for(code, inceptc_runtime::exec::features(tier))
    }

    /// [`beyond`] the features `checked`.
    fn beyond_for(
        code: &[u8],
        checked: Vec<inceptc_runtime::exec::Feature>,
    ) -> std::collections::BTreeSet<String> {
        let checked: Vec<String> = checked.iter().map(|f| f.name.replace('.', "_")).collect();
        let mut beyond = std::collections::BTreeSet::new();
        for instruction in Decoder::with_ip(64, code, 0, DecoderOptions::NONE) {
            for feature in instruction.cpuid_features() {
                let name = format!("{feature:?}");
                if !BASELINE.contains(&name.as_str()) && !checked.contains(&name) {
                    beyond.insert(name);
                }
            }
            // A transform's coefficients follow its return.
            if instruction.mnemonic() == Mnemonic::Ret {
                break;
            }
        }
        beyond
    }

    /// The bf16 and u8 tiles need exactly one feature beyond x86-64-v4's check: the one a tier
    /// that runs them must add to it.
    #[test]
    fn the_bf16_and_u8_tiles_need_one_feature_beyond_x86_64_v4() {
        use inceptc_runtime::exec::Tier;
        for (data, feature) in [(Data::Bf16, "AVX512_BF16"), (Data::U8S8, "AVX512_VNNI")] {
            let float = data == Data::Bf16;
            let tile = ZmmTile {
                pixels: 6,
                vectors: 2,
                last_lanes: 9,
                taps: [3, 3],
                tap_steps: [0x2000, 0x40],
                channels: 13,
                pixel_step: 0x40,
                bias: float,
                residual: true,
                relu: float,
                prefetch_step: 0x80,
                data,
            };
            let needs: Vec<String> = beyond(&tile.code().unwrap(), Tier::V4)
                .into_iter()
                .collect();
            assert_eq!(needs, [feature], "{data:?}");
        }
    }

    /// Every instruction the assembled functions contain needs only baseline x86-64 and features
    /// the executable's start-up check tests for its tier (`inceptc_runtime::exec::features`).
    #[test]
    fn the_tiles_use_only_features_the_start_up_check_tests() {
        use inceptc_runtime::exec::Tier;
        let check = |code: &[u8], tier: Tier, what: &str| {
            let needs = beyond(code, tier);
            assert!(
                needs.is_empty(),
                "{what} needs {needs:?}, which the {} check does not test",
                tier.name()
            );
        };
        check(&fma_probe(false).unwrap(), Tier::V3, "the ymm probe");
        check(&fma_probe(true).unwrap(), Tier::V4, "the zmm probe");
        for pixels in [1, 6, 12] {
            let tile = Avx2Tile {
                pixels,
                pixel_step: 0x100,
            };
            check(&tile.code().unwrap(), Tier::V3, "an AVX2 tile");
        }
        for (pixels, vectors, last_lanes, prefetch_step) in
            [(6, 4, 16, 0), (3, 1, 5, 96), (14, 2, 9, 256)]
        {
            for (bias, residual, relu) in [(false, false, false), (true, true, true)] {
                let tile = ZmmTile {
                    pixels,
                    vectors,
                    last_lanes,
                    taps: [3, 3],
                    tap_steps: [0x2000, 0x40],
                    channels: 13,
                    pixel_step: 0x40,
                    bias,
                    residual,
                    relu,
                    prefetch_step,
                    data: Data::F32,
                };
                check(&tile.code().unwrap(), Tier::V4, "a zmm tile");
            }
        }
        for (y, x, output) in [
            ((4, 3), (4, 3), false),
            ((4, 3), (4, 3), true),
            ((1, 1), (3, 7), true),
        ] {
            let [ly, lx] = [y, x].map(|(m, r): (usize, usize)| m + r - 1);
            let results = if output { y.0 * x.0 } else { ly * lx };
            let tile = TransformTile {
                y,
                x,
                output,
                loads: (0..ly * lx).map(|i| Some(64 * i as i32)).collect(),
                stores: (0..results).map(|i| Some(64 * i as i32)).collect(),
                vectors: 2,
                last_lanes: 7,
                bias: output,
                residual: output,
                relu: output,
            };
            check(&tile.code().unwrap(), Tier::V4, "a transform");
        }
    }

    /// The bf16 tiles, zmm and AMX, need only what the start-up check of bf16 code (with AMX
    /// for the AMX tile) tests.
    #[test]
    fn the_bf16_tiles_use_only_features_the_bf16_check_tests() {
        use inceptc_runtime::exec::{features_for, Tier};
        use inceptc_runtime::layout::Precision;
        let zmm = ZmmTile {
            pixels: 6,
            vectors: 2,
            last_lanes: 9,
            taps: [3, 3],
            tap_steps: [0x2000, 0x40],
            channels: 13,
            pixel_step: 0x40,
            bias: true,
            residual: true,
            relu: true,
            prefetch_step: 0x80,
            data: Data::Bf16,
        };
        let needs = beyond_for(
            &zmm.code().unwrap(),
            features_for(Tier::V4, Precision::Bf16, false),
        );
        assert!(needs.is_empty(), "the bf16 zmm tile needs {needs:?}");
        for (pixels, vectors) in [(32, 2), (9, 3), (17, 1)] {
            let amx = AmxTile {
                pixels,
                vectors,
                last_lanes: 7,
                taps: [3, 1],
                tap_steps: [0x2000, 0x40],
                chunks: 3,
                pixel_step: 0x80,
                bias: true,
                residual: true,
                relu: true,
                configures: pixels == 9,
                prefetch_step: 0x100,
                data: Data::Bf16,
            };
            let code = amx.code().unwrap();
            let needs = beyond_for(&code, features_for(Tier::V4, Precision::Bf16, true));
            assert!(needs.is_empty(), "the AMX tile needs {needs:?}");
            let without = beyond_for(&code, features_for(Tier::V4, Precision::Bf16, false));
            assert!(
                without.contains("AMX_TILE")
                    && without.contains("AMX_BF16")
                    && without.contains("PREFETCHW"),
                "{without:?}"
            );
            // The int8 AMX tile: AMX-INT8 and VNNI's check, not AMX-BF16's.
            let int8 = AmxTile {
                bias: false,
                relu: false,
                data: Data::U8S8,
                ..amx
            };
            let code = int8.code().unwrap();
            let needs = beyond_for(&code, features_for(Tier::V4, Precision::U8, true));
            assert!(needs.is_empty(), "the int8 AMX tile needs {needs:?}");
            let without = beyond_for(&code, features_for(Tier::V4, Precision::U8, false));
            assert!(
                without.contains("AMX_TILE") && without.contains("AMX_INT8"),
                "{without:?}"
            );
        }
    }
}
