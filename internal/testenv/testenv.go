// Package testenv tells tests where the real servers started by deploy/dev/up.sh (make
// services-up) listen, and fails a test at once, with the command that fixes it, when a server is
// not there. A missing server is a failure, never a skip.
//
// The ports are deploy/dev's: its defaults, or the same MUSIC_DEV_*_PORT variables that moved them
// there. Servers always listen on 127.0.0.1.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"testing"
	"time"
)

// MariaDB credentials of the test account that deploy/dev creates on both instances.
const (
	MariaDBUser     = "test"
	MariaDBPassword = "test"
)

func addr(t testing.TB, server, env, defPort string) string {
	t.Helper()
	port := os.Getenv(env)
	if port == "" {
		port = defPort
	}
	a := net.JoinHostPort("127.0.0.1", port)
	c, err := net.DialTimeout("tcp", a, 2*time.Second)
	if err != nil {
		t.Fatalf("%s is not reachable at %s (%v): start the test servers with `make services-up`", server, a, err)
	}
	_ = c.Close()
	return a
}

// Cassandra returns host:port of the Cassandra 2.1 node.
func Cassandra(t testing.TB) string {
	return addr(t, "Cassandra", "MUSIC_DEV_CASSANDRA_PORT", "19042")
}

// ZooKeeper returns host:port of the ZooKeeper server.
func ZooKeeper(t testing.TB) string {
	return addr(t, "ZooKeeper", "MUSIC_DEV_ZK_PORT", "12181")
}

// MariaDBA returns host:port of site a's MariaDB (server_id 1, GTID domain 1).
func MariaDBA(t testing.TB) string {
	return addr(t, "MariaDB (site a)", "MUSIC_DEV_MARIADB_A_PORT", "13316")
}

// MariaDBB returns host:port of site b's MariaDB (server_id 2, GTID domain 2).
func MariaDBB(t testing.TB) string {
	return addr(t, "MariaDB (site b)", "MUSIC_DEV_MARIADB_B_PORT", "13317")
}

// NATS returns the nats:// URL of the NATS server (JetStream enabled).
func NATS(t testing.TB) string {
	return "nats://" + addr(t, "NATS", "MUSIC_DEV_NATS_PORT", "14223")
}

// UniqueName returns prefix followed by random hex, usable as a keyspace, database or znode name,
// so that tests and repeated runs against the same servers never share state.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// WaitFor polls cond every 20 ms until it returns true or the deadline passes, then fails the
// test with what. It is the only way tests wait: never a bare sleep.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// Poll reports whether cond held within timeout, checking it every 20ms. Unlike WaitFor it may
// run outside the test's goroutine (where t.Fatal must not be called).
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
