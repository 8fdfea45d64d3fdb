package testenv

import (
	"testing"
	"time"
)

// The dev Cassandra's PID and CPU time are found through deploy/dev's PID file; this process's
// CPU time grows with work it does.
func TestServerCPU(t *testing.T) {
	Cassandra(t) // fails with the command to run when the dev servers are not up
	pid, ok := ServerPID("cassandra")
	if !ok || pid <= 1 {
		t.Fatalf("ServerPID(cassandra) = %d, %v: want the running dev server's PID", pid, ok)
	}
	if c, ok := ServerCPU("cassandra"); !ok || c <= 0 {
		t.Fatalf("ServerCPU(cassandra) = %v, %v: a running JVM has used CPU", c, ok)
	}
	if _, ok := ServerPID("no-such-service"); ok {
		t.Fatal("ServerPID found a service that has no PID file")
	}
	if _, ok := ServerCPU("no-such-service"); ok {
		t.Fatal("ServerCPU found a service that has no PID file")
	}
	c0 := ProcessCPU()
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for ProcessCPU()-c0 < 20*time.Millisecond && time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x ^= i
		}
	}
	if d := ProcessCPU() - c0; d < 20*time.Millisecond {
		t.Fatalf("ProcessCPU grew by %v after 10 s of work (%d)", d, x)
	}
}
