"""Ablation: the distillation temperature and the ce / mlm balance of the recipe (`distilmbert:runlocal`).

    distil sweep experiments/temperature_sweep.py --launcher local     # 4 points on this machine
    distil sweep experiments/temperature_sweep.py --launcher tpu --tpu my-v4-32 --zone us-central2-b \
        --workdir /mnt/shared/sweeps/temperature
"""

from distil.launch import product, zip_

CONFIG = "distilmbert:runlocal"


def get_sweep():
    temperatures = [{"loss.temperature": t} for t in (1.0, 2.0)]
    balances = zip_([{"loss.alpha_ce": 5.0}, {"loss.alpha_ce": 2.0}], [{"loss.alpha_mlm": 2.0}, {"loss.alpha_mlm": 5.0}])
    return product(temperatures, balances)
