//! Text files in and out, and what their snapshots may name.
//!
//! [`TextLinesSource`] reads the lines of a file or of every visible regular
//! file of a directory; the files are sorted by path and dealt to instances
//! (`file % parallelism == instance`). A line that is not UTF-8 fails the job
//! with the file and line number. Only regular files are read: an input that is
//! a FIFO, a socket or a device is refused when the source is created, directory
//! entries that are not regular files (symlinks included) are skipped, and a file
//! is opened without blocking and checked again on the open handle, so a file
//! swapped for a FIFO cannot block a worker thread.
//!
//! The source's snapshot records its input and a position for every file it
//! owns, finished ones included (`file-positions`, `Union`: every instance sees
//! every position, so a restore can tell a file added since from a finished one
//! and deal the files again at another parallelism). On restore, a position must
//! name a file of this run's input, the recorded input must be this run's, and a
//! file must not be shorter than its position; files of the input that no
//! position names are new and are read from the start.
//!
//! [`FileSink`] writes one line per record. Data goes to hidden in-progress files
//! (`.part-*.inprogress`); a file is published under its final name
//! (`part-<run>-<instance>-<n>`) by an atomic rename only once it is complete and
//! synced, so a reader of the directory never sees a partial file. The names a
//! restored snapshot asks it to rename must be plain names of its own pattern.

mod json;
mod sink;
mod source;

pub use json::{
    JSON_INPUT_STATE, JSON_POSITIONS_STATE, JsonLinesSource, LineDecoder, RecordsRead, SerdeJson,
};

pub use sink::{DEFAULT_PART_BYTES_MAX, FileSink, MAX_PART_NAME_BYTES, PENDING_STATE};
pub use source::{FILE_POSITIONS_STATE, INPUT_STATE, MAX_LINE_BYTES, TextLinesSource};

#[cfg(test)]
mod tests {
    use super::sink::{HIDDEN_SUFFIX, PART_PREFIX};
    use super::*;
    use flowstate_runtime::{Barrier, Sink, Source, SourcePoll, SubtaskInfo, UserError};
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    fn info() -> SubtaskInfo {
        SubtaskInfo::new("t", 0, 1, 128)
    }

    fn read_all(source: &TextLinesSource) -> Result<Vec<String>, UserError> {
        let mut reader = source.create_reader(&info())?;
        let mut out = Vec::new();
        while reader.poll(&mut out, 7, Instant::now())? != SourcePoll::Finished {}
        Ok(out)
    }

    #[test]
    fn reads_lines_of_a_directory_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "three\r\nfour").unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "no").unwrap();
        let source = TextLinesSource::new(dir.path()).unwrap();
        assert_eq!(read_all(&source).unwrap(), ["one", "two", "three", "four"]);
    }

    #[test]
    fn missing_input_names_the_path() {
        let err = TextLinesSource::new("/no/such/dir/input.txt")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "input path '/no/such/dir/input.txt' does not exist"
        );
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"fine\nalso fine\nbro\xffken\n").unwrap();
        let source = TextLinesSource::new(&path).unwrap();
        let err = read_all(&source).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "'{}' line 3: not valid UTF-8 (byte 3 of the line)",
                path.display()
            )
        );
    }

    #[test]
    fn sink_publishes_only_complete_parts() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap().with_part_bytes_max(10);
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer
            .write_batch(&mut vec![1u32, 22, 333, 4444, 55555])
            .unwrap();
        let visible = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        };
        assert!(
            visible(dir.path()).is_empty(),
            "nothing is visible before finish"
        );
        writer.finish().unwrap();
        let names = visible(dir.path());
        assert_eq!(names.len(), 2);
        let text: String = names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        assert_eq!(text, "1\n22\n333\n4444\n55555\n");
    }

    fn hidden_contents(dir: &Path) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(HIDDEN_SUFFIX))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn sink_prepare_defers_the_flush_and_fsync_and_commits_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap();
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer.write_batch(&mut vec![1u32, 2, 3]).unwrap();
        let prepared = writer
            .prepare_commit_deferred(Barrier::checkpoint(1))
            .unwrap();
        assert_eq!(prepared.state[0].elements.len(), 1, "the file is pending");
        // The synchronous half only closed the part: its data is still in the
        // buffer the deferred action flushes and syncs.
        assert_eq!(hidden_contents(dir.path()), [""]);
        // The task goes on writing (into a new part) meanwhile.
        writer.write_batch(&mut vec![4u32]).unwrap();
        (prepared.deferred.expect("an fsync to defer"))().unwrap();
        assert_eq!(hidden_contents(dir.path()), ["1\n2\n3\n", ""]);
        writer.commit(1).unwrap();
        let published: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(PART_PREFIX))
            .collect();
        assert_eq!(published.len(), 1);
        let text = std::fs::read_to_string(dir.path().join(&published[0])).unwrap();
        assert_eq!(text, "1\n2\n3\n");
    }

    #[test]
    fn sink_action_syncs_the_files_of_an_earlier_action_that_never_ran() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap();
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer.write_batch(&mut vec![1u32]).unwrap();
        let first = writer
            .prepare_commit_deferred(Barrier::checkpoint(1))
            .unwrap();
        drop(first.deferred); // e.g. the upload queue was full: never run
        writer.write_batch(&mut vec![2u32]).unwrap();
        let second = writer
            .prepare_commit_deferred(Barrier::checkpoint(2))
            .unwrap();
        assert_eq!(second.state[0].elements.len(), 2);
        assert_eq!(hidden_contents(dir.path()), ["", ""]);
        (second.deferred.unwrap())().unwrap();
        assert_eq!(hidden_contents(dir.path()), ["1\n", "2\n"]);
    }

    #[test]
    fn text_source_resumes_from_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
        std::fs::write(dir.path().join("a.txt"), lines[..6].join("\n") + "\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), lines[6..].join("\r\n")).unwrap();
        let source = TextLinesSource::new(dir.path()).unwrap();
        let mut reader = source.create_reader(&info()).unwrap();
        let mut seen = Vec::new();
        reader.poll(&mut seen, 4, Instant::now()).unwrap();
        let state = reader.snapshot(Barrier::checkpoint(1)).unwrap();
        reader.poll(&mut seen, 4, Instant::now()).unwrap(); // read after the snapshot: replayed below
        let mut subtask = info();
        subtask.restored = Some(std::sync::Arc::new(flowstate_runtime::RestoredState {
            keyed: Default::default(),
            lists: state,
        }));
        let mut restored = source.create_reader(&subtask).unwrap();
        seen.truncate(4);
        while restored.poll(&mut seen, 3, Instant::now()).unwrap() != SourcePoll::Finished {}
        assert_eq!(seen, lines);
    }
}
