package testenv

import (
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Private is a server of the test's own, started with deploy/dev's scripts in a directory and on
// ports of its own, so that a test can kill, stop and restart it without disturbing the shared
// servers other packages are testing against. It is stopped and removed when the test ends.
type Private struct {
	Service string // cassandra, zookeeper, nats, mariadb-a, mariadb-b
	Addr    string // host:port of its client port
	dir     string
	env     []string
}

// StartPrivate starts a private instance of service (cassandra, zookeeper, nats, mariadb-a or
// mariadb-b) and waits until it is ready. Extra environment (e.g.
// MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC=batch) is passed to the scripts.
func StartPrivate(t testing.TB, service string, extraEnv ...string) *Private {
	t.Helper()
	dir, err := os.MkdirTemp("", "musicd-private-"+service+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // MariaDB runs as mysql and must traverse it
		t.Fatal(err)
	}
	install := os.Getenv("MUSIC_DEV_INSTALL_DIR")
	if install == "" {
		shared := os.Getenv("MUSIC_DEV_DIR")
		if shared == "" {
			shared = "/tmp/musicd-dev"
		}
		install = filepath.Join(shared, "install")
	}
	p := &Private{Service: service, dir: dir}
	t.Cleanup(func() {
		p.script(t, "down.sh")
		_ = os.RemoveAll(dir)
	})
	// A port found free can be taken before the server binds it (other tests start servers
	// too); up.sh then refuses it, and the server is started again on other ports.
	for attempt := 1; ; attempt++ {
		p.env = append(os.Environ(), "MUSIC_DEV_DIR="+dir, "MUSIC_DEV_INSTALL_DIR="+install)
		var port string
		switch service {
		case "cassandra":
			port = freePort(t)
			p.env = append(p.env, "MUSIC_DEV_CASSANDRA_PORT="+port, "MUSIC_DEV_CASSANDRA_STORAGE_PORT="+freePort(t),
				"MUSIC_DEV_CASSANDRA_SSL_STORAGE_PORT="+freePort(t))
		case "zookeeper":
			port = freePort(t)
			p.env = append(p.env, "MUSIC_DEV_ZK_PORT="+port)
		case "nats":
			port = freePort(t)
			p.env = append(p.env, "MUSIC_DEV_NATS_PORT="+port, "MUSIC_DEV_NATS_MONITOR_PORT="+freePort(t))
		case "mariadb-a":
			port = freePort(t)
			p.env = append(p.env, "MUSIC_DEV_MARIADB_A_PORT="+port)
		case "mariadb-b": // server id 2, GTID domain 2: a replica of a private mariadb-a can be one
			port = freePort(t)
			p.env = append(p.env, "MUSIC_DEV_MARIADB_B_PORT="+port)
		default:
			t.Fatalf("StartPrivate: unknown service %q", service)
		}
		p.env = append(p.env, extraEnv...)
		p.Addr = net.JoinHostPort("127.0.0.1", port)
		out, err := p.up(t)
		if err == nil {
			return p
		}
		if attempt < 5 && strings.Contains(out, "already in use") {
			continue
		}
		t.Fatalf("starting private %s: %v\n%s", p.Service, err, out)
	}
}

// Start starts the server again (after Stop or Kill9), keeping its data, and waits until ready.
// Right after a kill, the old process's ports may still answer for a moment (up.sh then refuses
// to start): Start retries until they are released, for at most 30 s.
func (p *Private) Start(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := p.up(t)
		if err == nil {
			return
		}
		if !strings.Contains(out, "already in use") || time.Now().After(deadline) {
			t.Fatalf("starting private %s: %v\n%s", p.Service, err, out)
		}
		time.Sleep(200 * time.Millisecond) // polling the condition "ports released", bounded above
	}
}

// up runs up.sh. A server that is running but not ready in time (once seen in CI: a Cassandra
// 2.1 restarted after kill -9 stalled for 120 s opening its first system table, with nothing else
// in its log) is logged with up.sh's report, which includes its main thread's stack, then killed
// and started once more: the server hanging is not what the calling test checks, and the retry is
// visible in the test's log.
func (p *Private) up(t testing.TB) (string, error) {
	t.Helper()
	out, err := p.script(t, "up.sh")
	if err == nil || !strings.Contains(out, "not ready within") {
		return out, err
	}
	t.Logf("private %s did not become ready; killing it and starting it once more:\n%s", p.Service, out)
	p.Kill9(t)
	return p.script(t, "up.sh")
}

// Stop stops the server gracefully (SIGTERM) and waits until it has exited.
func (p *Private) Stop(t testing.TB) {
	t.Helper()
	if out, err := p.script(t, "down.sh"); err != nil {
		t.Fatalf("stopping private %s: %v\n%s", p.Service, err, out)
	}
}

// Kill9 kills the server with SIGKILL, as a crash would, and waits until it is gone.
func (p *Private) Kill9(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dir, "run", p.Service+".pid"))
	if err != nil {
		t.Fatalf("private %s: no pidfile: %v", p.Service, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("private %s: pidfile %q", p.Service, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
	// down.sh reaps the pidfile and waits until the process is gone; a killed JVM's threads may
	// still hold its sockets for a moment after its main thread exits, so wait for the port too.
	p.Stop(t)
	WaitFor(t, 30*time.Second, "the killed "+p.Service+" to release "+p.Addr, func() bool {
		c, err := net.DialTimeout("tcp", p.Addr, time.Second)
		if err != nil {
			return true
		}
		_ = c.Close()
		return false
	})
}

func (p *Private) script(t testing.TB, name string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(repoRoot(t), "deploy", "dev", name), append([]string{p.Service}, args...)...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// repoRoot is the directory holding go.mod, found from the test's working directory.
func repoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// freePort returns a port that is free on 127.0.0.1, chosen below the kernel's ephemeral range
// (32768 and up here): a port the kernel hands out for ":0" can be taken by any outgoing connection
// between this check and the server's start, which made private servers fail to bind now and then.
func freePort(t testing.TB) string {
	for range 100 {
		port := strconv.Itoa(20000 + rand.IntN(12000))
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			continue // taken
		}
		_ = ln.Close()
		return port
	}
	t.Fatal("testenv: no free port found in 20000-31999")
	return ""
}
