package rpcserver

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any leaves a goroutine behind:
// the workers and the servers start them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
