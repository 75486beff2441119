//! The checks a decoded description passes before anything runs from it.

use super::*;

impl ModelDesc {
    /// A batch and an output to run, an input that matches them, and every layout inside the
    /// arena (all sums checked: the values come from a file).
    pub(super) fn check(&self) -> Result<(), DescError> {
        if self.batch == 0 {
            return Err(DescError("the batch is 0"));
        }
        if self.outputs.is_empty() {
            return Err(DescError("the model has no output"));
        }
        if let Preprocess::Timm {
            crop_pct,
            mean,
            std,
            ..
        } = self.preprocess
        {
            // timm's crop fractions lie around 0.8–1; far outside, the resize would be empty or
            // astronomically large.
            if !(0.05..=20.0).contains(&crop_pct)
                || !mean.iter().chain(&std).all(|v| v.is_finite())
                || std.contains(&0.0)
            {
                return Err(DescError("the image preprocessing is out of range"));
            }
        }
        let i = &self.input;
        if i.n != self.batch || [i.h, i.w] != self.image || i.channels == 0 {
            return Err(DescError(
                "the input does not match the batch and image size",
            ));
        }
        let maps = std::iter::once(&self.input)
            .chain(self.steps.iter().flat_map(|s| &s.clear_halos))
            .chain(self.guards.iter().filter_map(|g| g.halo.as_ref()))
            .chain(self.outputs.iter().filter_map(|o| match o {
                Layout::Map(m) => Some(m),
                Layout::Vector(_) => None,
            }));
        for m in maps {
            let channels = m.channel_offset.checked_add(m.channels);
            if m.checked_end().is_none_or(|e| e > self.arena_bytes)
                || channels.is_none_or(|c| c > m.c_total)
            {
                return Err(DescError("a feature map lies outside the arena"));
            }
            // Channel pairs fill dwords, and the halo is cleared a dword at a time.
            if m.precision == Precision::Bf16 && !m.c_total.is_multiple_of(2) {
                return Err(DescError(
                    "a bf16 feature map has an odd number of channels",
                ));
            }
            if m.precision == Precision::U8 && !m.c_total.is_multiple_of(4) {
                return Err(DescError(
                    "an int8 feature map's channels are not a multiple of 4",
                ));
            }
            if m.precision == Precision::U8 && !(m.quant.scale.is_finite() && m.quant.scale > 0.0) {
                return Err(DescError("an int8 feature map's scale is not positive"));
            }
        }
        // A stage is steps with kernels: the input's step, and the first step, run alone.
        let mut previous: Option<&StepDesc> = None;
        for s in &self.steps {
            if s.joins && (!s.has_kernel || !previous.is_some_and(|p| p.has_kernel)) {
                return Err(DescError(
                    "a step without a kernel runs concurrently with another",
                ));
            }
            previous = Some(s);
        }
        for g in &self.guards {
            let end = g
                .offset
                .checked_add(g.bytes)
                .and_then(|e| e.checked_add(g.guard));
            if g.offset < g.guard
                || !g.guard.is_multiple_of(4)
                || !g.offset.is_multiple_of(4)
                || end.is_none_or(|e| e > self.arena_bytes)
                || g.live[0] > g.live[1]
                || g.live[1] > self.steps.len()
            {
                return Err(DescError("a guarded buffer lies outside the arena"));
            }
        }
        if crate::pack::packed_bytes(&self.segments).is_none_or(|b| b > self.packed_bytes) {
            return Err(DescError(
                "a weight segment lies outside the packed weights",
            ));
        }
        for o in &self.outputs {
            if let Layout::Vector(v) = o {
                let features = v.feature_offset.checked_add(v.features);
                if v.checked_end().is_none_or(|e| e > self.arena_bytes)
                    || features.is_none_or(|f| f > v.f_total)
                {
                    return Err(DescError("a vector lies outside the arena"));
                }
            }
        }
        Ok(())
    }
}
