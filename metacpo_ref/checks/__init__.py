"""The checks a port or a change is measured against: derivatives against finite
differences (gradcheck), the golden fixtures (fixtures), the speed benchmark (bench), the
seeded test problems they share (problems)."""
