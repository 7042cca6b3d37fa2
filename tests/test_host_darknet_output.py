"""dlserver_host.darknet_output: the parsers of Darknet's lines, on lines made with Darknet's formats."""

import math

from dlserver_host import darknet_output as out


def test_train_line():
    line = "%d, %.3f: %f, %f avg, %f rate, %f seconds, %d images\n" % (12, 0.02, 2.25, 2.3, 0.01, 0.5, 1200)
    assert out.train_line(line) == out.TrainLine(12, 0.02, 2.25, 2.3, 0.01, 0.5, 1200)
    nan = out.train_line(
        "%d, %.3f: %f, %f avg, %f rate, %f seconds, %d images" % (1, 0, math.nan, math.inf, 0, 0, 100)
    )
    assert math.isnan(nan.loss) and nan.avg == math.inf
    assert out.train_line("Learning Rate: 0.01, Momentum: 0.9, Decay: 5e-05") is None
    assert [t.batch for t in out.train_lines("mnist_lenet\n" + line + line.replace("12, ", "13, "))] == [
        12,
        13,
    ]


def test_top_line():
    lines = "data/a_c1.png, 1, %f, %f, \n%d: top 1: %f, top %d: %f\n" % (0.1, 0.2, 9999, 0.9501, 5, 0.9946)
    assert out.top_line(lines.splitlines()[1]) == out.TopLine(9999, 0.9501, 5, 0.9946)
    assert out.last_top_line(lines) == out.TopLine(9999, 0.9501, 5, 0.9946)
    assert out.top_line(lines.splitlines()[0]) is None
    assert out.last_top_line("") is None and out.last_top_line(lines + "trailing\n") is None


def test_predicted_line():
    line = "%s: Predicted in %f seconds.\n" % ("data/dog: 1.jpg", 0.331)
    assert out.predicted_line(line) == out.PredictedLine("data/dog: 1.jpg", 0.331)
    assert out.predicted_line("dog: 57%") is None


def test_onnx_value_line():
    assert out.onnx_value_line("n_float_data[%d] = %f\n" % (3, -12.5)) == out.OnnxValue(3, -12.5)
    assert math.isnan(out.onnx_value_line("n_float_data[0] = %f" % math.nan).value)
    assert out.onnx_value_line("finished!") is None
