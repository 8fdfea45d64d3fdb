package feeds

import (
	"bytes"
	"os"
	osexec "os/exec"
	"sync"
	"syscall"
	"testing"
)

// process is a child run of the test binary.
type process struct {
	cmd    *osexec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

// exec starts the test binary with env added; it is killed when the test ends.
func exec(t *testing.T, env ...string) *process {
	t.Helper()
	p := &process{cmd: osexec.Command(os.Args[0], "-test.run=^$"), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Env = append(p.cmd.Env, "GORACE=atexit_sleep_ms=0")
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("child stderr:\n%s", p.stderr.String())
			p.mu.Unlock()
		}
	})
	return p
}

// kill9 kills the child with SIGKILL and waits until it is gone.
func (p *process) kill9(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Fatalf("child exited before it was killed: %v\n%s", p.cmd.ProcessState, p.stderr.String())
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}
