import torch
import torch.nn.functional as F
import xarray as xr
from sklearn.datasets import load_digits

from scorebank.pipeline.record import IndexedDataset, Recorder

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16  # (1797, 64)
y = torch.tensor(digits.target)
train_x, train_y, test_x, test_y = x[:1400], y[:1400], x[1400:], y[1400:]
loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(train_x, train_y)),
                                     batch_size=64, shuffle=True)  # yields (index, x, y)
E = 5
rec = Recorder.create("mine.zarr", labels=train_y, epochs=E, dataset="digits-first-1400", inputs=train_x,
                      class_names=[str(c) for c in range(10)], config={"model": "mlp-64", "lr": 0.1})
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
with rec.run(seed=0) as run:
    run.record_epoch(0, model, train_x, test=(test_x, test_y))  # at initialisation
    for epoch in range(1, E + 1):
        for idx, xb, yb in loader:
            logits = model(xb)
            run.observe(epoch, idx, logits, yb)  # in-flight correctness: forgetting events
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        run.record_epoch(epoch, model, train_x, test=(test_x, test_y))  # clean pass: margin, EL2N, loss

ds = xr.open_zarr("mine.zarr")
print(ds.test_accuracy.sel(run=0).values)  # then: scorebank analyze mine.zarr forgetting
