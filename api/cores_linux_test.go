//go:build linux

package api

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/musicd/musicd/internal/testenv"
)

// separateCores gives the dev Cassandra the machine's last CPU and this process (the daemon
// under test, its clients, or the driver's inserts) the others, the way they would run on
// machines of their own, and returns what undoes it. Every thread of both processes is moved,
// and threads started meanwhile inherit their creator's CPUs, so undo moves every thread back to
// the CPUs it had. GOMAXPROCS follows this process's CPUs, as the runtime sets it at start. Should
// the benchmark be killed before undo, deploy/dev/down.sh and up.sh restart Cassandra on every CPU.
func separateCores() (undo func(), err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return nil, errors.New("one CPU: nothing to separate")
	}
	pid, ok := testenv.ServerPID("cassandra")
	if !ok {
		return nil, errors.New("no PID file of a dev Cassandra (deploy/dev): its CPUs cannot be set")
	}
	var self, cass unix.CPUSet
	for i := range n - 1 {
		self.Set(i)
	}
	cass.Set(n - 1)
	restoreCass, err := setCPUs(pid, cass)
	if err != nil {
		return nil, err
	}
	restoreSelf, err := setCPUs(os.Getpid(), self)
	if err != nil {
		restoreCass()
		return nil, err
	}
	procs := runtime.GOMAXPROCS(n - 1)
	return func() {
		runtime.GOMAXPROCS(procs)
		restoreSelf()
		restoreCass()
	}, nil
}

// setCPUs moves every thread of process pid to the CPUs in set and returns what moves them back
// to the CPUs the process had (threads started meanwhile included).
func setCPUs(pid int, set unix.CPUSet) (func(), error) {
	var was unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &was); err != nil {
		return nil, fmt.Errorf("CPUs of process %d: %w", pid, err)
	}
	apply := func(s unix.CPUSet) error {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			// A thread that ended meanwhile is not an error.
			if err := unix.SchedSetaffinity(tid, &s); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("CPUs of thread %d of process %d: %w", tid, pid, err)
			}
		}
		return nil
	}
	undo := func() { _ = apply(was) }
	if err := apply(set); err != nil {
		undo()
		return nil, err
	}
	return undo, nil
}
