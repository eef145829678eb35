//! The floating-point mode a model runs in: denormals as zero.
//!
//! ONNX Runtime's session option `session.set_denormal_as_zero` (tickinfer sets it) turns
//! on flush-to-zero and denormals-are-zero (MXCSR bits FTZ and DAZ on x86-64) on the
//! thread that builds the session and on its own pool threads — not on the thread that
//! later runs it. A native evaluator must compare and add exactly as ONNX Runtime does:
//! with DAZ, an input of 1e-40 compares as 0 against a threshold of 0. So every thread
//! that runs a model — the scoring thread, the pipeline worker, the live verifier, the
//! load-time gate — sets the same mode itself with [`denormals_as_zero`], and
//! [`is_denormals_as_zero`] lets tests and logs check it.
//!
//! On targets other than x86-64 ONNX Runtime sets nothing, and neither does this.

const FTZ: u32 = 1 << 15;
const DAZ: u32 = 1 << 6;

/// Set flush-to-zero and denormals-are-zero on the calling thread (what ONNX Runtime's
/// option sets on the threads it owns).
pub fn denormals_as_zero() {
    #[cfg(target_arch = "x86_64")]
    {
        let csr = mxcsr() | FTZ | DAZ;
        // SAFETY: LDMXCSR of the current value with two mode bits added: no exception is
        // unmasked and no reserved bit is set, so no instruction after it can fault because
        // of it; it changes only how this thread's SSE arithmetic treats denormals, as ONNX
        // Runtime does on the threads it owns.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly)) };
    }
}

/// Whether the calling thread runs with denormals as zero (FTZ and DAZ both set).
pub fn is_denormals_as_zero() -> bool {
    if cfg!(target_arch = "x86_64") {
        mxcsr() & (FTZ | DAZ) == FTZ | DAZ
    } else {
        true
    }
}

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: STMXCSR only stores the control register into the local `csr`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
    csr
}

#[cfg(not(target_arch = "x86_64"))]
fn mxcsr() -> u32 {
    FTZ | DAZ
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_sets_its_own_mode() {
        std::thread::spawn(|| {
            denormals_as_zero();
            assert!(is_denormals_as_zero());
            // With DAZ a denormal operand reads as zero.
            let d = std::hint::black_box(f32::from_bits(1));
            assert!(d <= std::hint::black_box(0.0));
        })
        .join()
        .unwrap();
    }
}
