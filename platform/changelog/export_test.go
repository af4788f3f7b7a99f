package changelog

// WithFailpoint calls fn at each step of a rewrite; an error from fn stops
// the rewrite there, as a crash would.
func WithFailpoint(fn func(step string) error) Option {
	return func(c *config) { c.failpoint = fn }
}
