"""ETO as plain, typed library code: no Prefect imports here."""
