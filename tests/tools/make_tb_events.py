"""Write a TensorBoard event file with a falling loss curve (tools venv): python make_tb_events.py DIR"""

import json
import sys

from torch.utils.tensorboard import SummaryWriter

writer = SummaryWriter(sys.argv[1])
for step in range(1, 21):
    writer.add_scalar("train/loss", 3.0 / step, step)
writer.close()
print(json.dumps({"logdir": sys.argv[1]}))
