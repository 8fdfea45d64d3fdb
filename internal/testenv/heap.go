package testenv

import (
	"runtime"
	"time"
)

// PeakHeapGrowth runs fn while sampling the heap every 5 ms and returns the peak growth of the
// live heap over its size before fn, in bytes: what a benchmark reports as memory growth.
func PeakHeapGrowth(fn func()) float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() { // ends when fn has returned
		defer close(sampled)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(stop)
	<-sampled
	return float64(peak - base)
}
