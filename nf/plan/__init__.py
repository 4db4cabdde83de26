"""Planning a TPU run on a machine without TPUs: compile `nf-train`'s steps for a named slice
(`nf.plan.planner`, the `nf-plan` command) with the generations' figures of `nf.plan.tpus`."""
