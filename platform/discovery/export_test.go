package discovery

// StartFrom starts the watcher from an old snapshot, as one that fell
// behind would be.
func (w *Watcher) StartFrom(s *Snapshot) { w.startFrom(s) }
