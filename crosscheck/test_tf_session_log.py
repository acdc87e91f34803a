"""The SessionLog START event that marks a resumed run (SummaryWriter's purge_step), as
TensorFlow's own reader and Event proto read it."""
import tensorflow as tf

from tinybn.summary import SummaryWriter


def test_tf_reads_the_session_log_start(tmp_path):
    with SummaryWriter(tmp_path, purge_step=5) as w:
        w.scalar("loss", 1.0, 5)
    events = [tf.compat.v1.Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(w.path)]
    assert [e.WhichOneof("what") for e in events] == ["file_version", "session_log", "summary"]
    start = events[1]
    assert start.step == 5 and start.session_log.status == tf.compat.v1.SessionLog.START
    assert start.session_log.checkpoint_path == "" and start.session_log.msg == ""
    assert start.wall_time == events[0].wall_time and events[2].step == 5
