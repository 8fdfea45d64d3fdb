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

// separateCores gives the dev Cassandra the last of this process's CPUs and this process (the
// daemon under test, its clients, or the driver's inserts) the others, the way they would run on
// machines of their own, and returns what undoes it. Every thread of both processes is moved,
// and threads started meanwhile inherit their creator's CPUs, so undo moves every thread back to
// the CPUs it had. GOMAXPROCS follows this process's CPUs, as the runtime sets it at start. Should
// the benchmark be killed before undo, deploy/dev/down.sh and up.sh restart Cassandra on every CPU.
func separateCores() (undo func(), err error) {
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		return nil, fmt.Errorf("this process's CPUs: %w", err)
	}
	var cpus []int // the CPUs this process may run on, which need not be 0..n-1
	for i := 0; len(cpus) < mine.Count(); i++ {
		if mine.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return nil, errors.New("one CPU: nothing to separate")
	}
	pid, ok := testenv.ServerPID("cassandra")
	if !ok {
		return nil, errors.New("no PID file of a dev Cassandra (deploy/dev): its CPUs cannot be set")
	}
	var self, cass unix.CPUSet
	for _, c := range cpus[:len(cpus)-1] {
		self.Set(c)
	}
	cass.Set(cpus[len(cpus)-1])
	restoreCass, err := setCPUs(pid, cass)
	if err != nil {
		return nil, err
	}
	restoreSelf, err := setCPUs(os.Getpid(), self)
	if err != nil {
		restoreCass()
		return nil, err
	}
	procs := runtime.GOMAXPROCS(len(cpus) - 1)
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
